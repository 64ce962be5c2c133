"""The in-app channel: storing and publishing is the delivery (done by dispatch)."""
from .base import Channel


class SystemChannel(Channel):
    def send(self, outbound):
        return None
