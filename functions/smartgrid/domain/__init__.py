"""What the service does: predictions, the champion model set, retraining, backups and
restores, meter-data ingestion, usage reports, incidents, the health probe and the ops check.

Each module is called by an entry point (``api``, ``jobs``, ``cli``) and reaches AWS only
through ``store``; none imports boto3 or FastAPI."""
