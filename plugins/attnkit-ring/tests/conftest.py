"""Test setup for attnkit-ring: the multi-process tests start their own gloo process groups
(see ``_launch.py``); nothing to set up here."""
