"""Priority lanes: a one-time password is never queued behind a newsletter.

Every event has a priority (`notifications.yaml`: `priority: urgent | high | normal | bulk`;
`urgent: true` means `urgent`), and a trigger may lower its own (`"priority": "bulk"`), never
raise it (400 `invalid_priority`). The trigger's lane is stored with it (its body's `priority`);
its drain job and its deliveries' jobs go to that lane's queues:

    lane     dispatch queue                  deliveries queue
    urgent   <dispatch>-urgent               <deliveries>-urgent
    high     <dispatch>-high                 <deliveries>-high
    normal   <dispatch> (queue.yaml's name)  <deliveries>
    bulk     <dispatch>-bulk                 <deliveries>-bulk

(all under REDIS_PREFIX; `normal` keeps the names of a release without lanes, so its queued jobs
are still served). A worker takes the lanes in this order, dispatch before deliveries within a
lane (RQ serves its queues in the order given), so a waiting urgent job is the next one any worker
starts. A job already running is not interrupted; a drain of a lower lane hands over between
chunks and batches as soon as a higher lane has work waiting (`enqueue.higher_waiting`), so an urgent
trigger is stored next even while a 100,000-user fan-out is under way.

`WORKER_LANES` (app/config.py) limits a worker to some lanes: `WORKER_LANES=urgent python -m
workers` is a worker that only an urgent job can keep busy (Procfile `urgent`).
"""
from ..domain import LANES
from ..errors import InvalidPriority

NORMAL = "normal"


def rank(lane):
    """0 for urgent ... 3 for bulk; a trigger of the previous release (no lane) is normal."""
    return LANES.index(lane or NORMAL)


def for_trigger(event, requested):
    """The trigger's lane: the event's priority, or a lower one the trigger asked for."""
    if requested is None:
        return event.priority
    if rank(requested) < rank(event.priority):
        raise InvalidPriority(f"Priority {requested!r} is above what {event.group}.{event.name} allows "
                              f"({event.priority!r}); a trigger may only lower it")
    return requested


def queue_suffix(lane):
    return "" if (lane or NORMAL) == NORMAL else f"-{lane}"
