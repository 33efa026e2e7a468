"""The untrusted side: worker entry point, protocol messages, offline image builder."""
