"""Test support: real local servers the tests drive."""
