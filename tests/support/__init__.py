"""Helpers shared by the tests (not tests themselves): synthetic images and files, tiny data."""
