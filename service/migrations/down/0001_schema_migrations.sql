-- Undo 0001: drop the record itself (its own row goes with it); the last step of a rollback to 0.
DROP TABLE IF EXISTS schema_migrations;
