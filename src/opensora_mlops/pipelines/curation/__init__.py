"""Curation pipeline: raw_metadata → scenes → clips → captions → scores → clip_metadata → stage filters."""
