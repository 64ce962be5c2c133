"""The service's log lines as it writes them (its JSON formatter), caught in the test's process."""
import json
import logging

from app.logs import JsonFormatter


class Capture(logging.Handler):
    """A handler keeping every record as the parsed JSON line the service would write; add it to the
    root logger for the span of the test."""

    def __init__(self):
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines = []

    def emit(self, record):
        self.lines.append(json.loads(self.format(record)))
