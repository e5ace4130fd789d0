"""The CDK app: ``npx cdk synth`` (offline: no Docker, no credentials) and ``npx cdk deploy``.

Settings come from context (``-c envName=prod -c alertEmails='{"L3": ["oncall@example.com"]}'``),
validated before anything is built. cdk-nag's AwsSolutions pack checks the whole app; every
finding we accept is acknowledged with its reason below, and any other fails the synth; checkov's
accepted findings are marked on their resources with their reasons (``infra/checkov.py``).
"""

from __future__ import annotations

import aws_cdk as cdk

from .checkov import add_checkov_skips
from .nag import add_nag
from .settings import DeploySettings
from .stack import SmartgridStack


def build(app: cdk.App, *, nag: bool = True) -> SmartgridStack:
    settings = DeploySettings.from_context(app.node)
    stack = SmartgridStack(app, f"Smartgrid-{settings.env_name}", settings=settings)
    add_checkov_skips(stack)
    if nag:
        add_nag(app, stack)
    return stack


def main() -> None:
    app = cdk.App()
    build(app)
    app.synth()


if __name__ == "__main__":
    main()
