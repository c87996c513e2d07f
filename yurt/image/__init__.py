"""Image formats: SIF, squashfs, sandbox directories."""
