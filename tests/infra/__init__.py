"""Infrastructure tests: the Lambda layers and the CDK app (synth, cdk-nag, cfn-lint, checkov)."""
