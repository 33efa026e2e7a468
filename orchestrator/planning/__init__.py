"""Planning: goal parsing, the deterministic assembler, and the offline and LLM planners."""
