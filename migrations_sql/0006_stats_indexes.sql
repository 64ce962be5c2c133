-- Analytics and retention read notifications by creation time: the stats
-- endpoint for a window (`created_at >= from AND created_at < to`), the
-- retention purge for what is older than a group's cut-off. created_at grows
-- with inserts, so this index is appended at its right edge (cheap on the
-- write path). Deliveries are reached from those notifications through
-- `deliveries (notification_id, channel)` (0002's UNIQUE constraint).
CREATE INDEX notifications_created ON notifications (created_at);
