"""``python -m smartgrid.cli``: the same app as the ``smartgrid`` console script."""

from smartgrid.cli.main import app

app()
