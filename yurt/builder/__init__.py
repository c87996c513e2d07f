"""Image builds: definition files (parsing, templating) -> build plan -> image."""
