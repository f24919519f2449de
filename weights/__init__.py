"""Shipped weights; installed as the ``jdnet_cli.weights`` package so they travel in the wheel."""
