"""Fuzz targets (atheris' `def test_one_input(data: bytes)`); tests under tests/ run each one under hypothesis in CI."""
