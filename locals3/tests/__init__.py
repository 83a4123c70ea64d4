"""Tests of the S3 server supervisor (`python -m locals3`), each with servers, stores and repositories of its own."""
