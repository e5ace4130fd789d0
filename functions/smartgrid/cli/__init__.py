"""The ``smartgrid`` console script: ``main.app`` adds the Typer instances of one module per command group."""
