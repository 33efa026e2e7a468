"""pytorch-researcher orchestrator: the trusted side."""
