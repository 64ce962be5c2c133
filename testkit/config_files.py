"""The configuration files a test or scenario gives the service: copies of queue.yaml with a few
keys changed, and notifications.yaml + queue.yaml written for channel tests.

The service reads them from QUEUE_CONFIG and NOTIFICATIONS_CONFIG, so a test changes a limit or a
back-off by pointing a process or an app at a file of its own, never by patching code.
"""
import json
from pathlib import Path

import yaml

from devtools.services import REPO_ROOT


def queue_yaml(directory, name="queue.yaml", base=None, **sections):
    """A copy of queue.yaml (the repository's, or the file `base`) with some keys of some sections
    replaced: queue_yaml(tmp_path, rate_limits={"trigger": "6/minute"}). Returns its path."""
    data = yaml.safe_load(Path(base or REPO_ROOT / "queue.yaml").read_text())
    for section, values in sections.items():
        data[section] = dict(data.get(section) or {}, **values)
    path = Path(directory) / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def queue_config(directory, interval_seconds=1, stale_after_seconds=1):
    """queue.yaml whose relay acts within about two seconds (whole seconds only), for QUEUE_CONFIG."""
    return queue_yaml(directory, "queue.fast-relay.yaml",
                      relay={"interval_seconds": interval_seconds, "stale_after_seconds": stale_after_seconds})


def shipped_groups():
    """The groups of the repository's notifications.yaml, in its order: the keys of every unread
    count's `by_group` under the shipped configuration."""
    data = yaml.safe_load((REPO_ROOT / "notifications.yaml").read_text())
    return tuple(data["groups"])


BASE_GROUPS = {
    "chat": {"aliases": ["chats"], "events": {"message_received": {"channels": ["system", "email"]}}},
    "security": {"events": {"login_alert": {"channels": ["system", "email"], "locked": True, "urgent": True}}},
}


def channel_config(tmp_path, channels, events=None, attempts=3, backoff=(60, 600), templates=None):
    """Write notifications.yaml and queue.yaml; return the settings that point at them.

    `channels`: name -> options (the in-app `system` channel is added);
    `events`: group -> event -> channel list, merged over BASE_GROUPS.
    """
    groups = json.loads(json.dumps(BASE_GROUPS))
    known = {"system", *channels}
    for group in groups.values():       # the base events use only the channels this config has
        for event in group["events"].values():
            event["channels"] = [c for c in event["channels"] if c in known]
    for group, group_events in (events or {}).items():
        groups.setdefault(group, {"events": {}})
        for event, chans in group_events.items():   # a channel list, or the event's whole mapping
            groups[group]["events"][event] = dict(chans) if isinstance(chans, dict) else {"channels": list(chans)}
    notifications = {"channels": dict({"system": {"enabled": True}}, **channels), "groups": groups,
                     "templates": templates or {"default": {"email_subject": "{title}",
                                                            "sms": "{title}: {content}"}}}
    queue = {"queues": {"dispatch": "test-dispatch", "deliveries": "test-deliveries"},
             "retry": {"attempts": attempts, "backoff": list(backoff)},
             "batch": {"users_per_chunk": 100, "max_user_ids": 1000}}
    n_path, q_path = Path(tmp_path) / "notifications.yaml", Path(tmp_path) / "queue.yaml"
    n_path.write_text(yaml.safe_dump(notifications, sort_keys=False))
    q_path.write_text(yaml.safe_dump(queue, sort_keys=False))
    return {"NOTIFICATIONS_CONFIG": str(n_path), "QUEUE_CONFIG": str(q_path)}
