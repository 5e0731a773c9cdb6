"""Dash frontend; talks to the backend over HTTP only."""
