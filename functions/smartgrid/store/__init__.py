"""Data access: the only package that talks to DynamoDB (and, later, S3)."""
