"""Test backends built on the (UNSAFE, local) subprocess backend."""

from orchestrator.sandbox.local import SubprocessBackend


class CountingBackend(SubprocessBackend):
    """Keeps every sandbox it made, so that a test can check they all exited."""

    def __init__(self):
        self.created = []

    def create(self, *args):
        sandbox = super().create(*args)
        self.created.append(sandbox)
        return sandbox
