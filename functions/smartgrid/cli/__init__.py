"""The ``smartgrid`` console script: ``main.app`` assembles one command group per module."""
