"""Parsers: log bytes -> rows, vectorised; the Parser protocol."""
