-- The in-app (`system`) delivery of a notification is `sent` exactly when the notification is
-- `in_app` (the dispatch plan hides a notification precisely when that delivery is not sent), so
-- the notification row records it and the fan-out no longer writes a deliveries row to repeat it
-- (app/deliveries/in_app.py). The rows written before say nothing more (no attempt, no reason):
-- remove them, so every reader derives the same answer. A `skipped` in-app row keeps its reason.
DELETE FROM deliveries WHERE channel = 'system' AND status = 'sent';
