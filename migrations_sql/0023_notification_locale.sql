-- The locale of a trigger's per-locale text (`translations`) a notification was stored in, chosen at
-- fan-out from the contact's locale (de-AT → de → the trigger's own text); NULL when the trigger's own
-- title and content were stored. Deliveries name it in the email's Content-Language (app/i18n).
ALTER TABLE notifications ADD COLUMN locale text;

-- A trigger's `amounts` ({name: {"amount": "1234.56", "currency": "EUR"}}), kept with each of its
-- notifications: template variables a delivery formats in the contact's locale (app/i18n.amounts).
ALTER TABLE notifications ADD COLUMN amounts jsonb;
