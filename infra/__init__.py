"""The CDK app that deploys smartgrid (``npx cdk synth`` / ``npx cdk deploy`` from the repo root)."""
