"""Stream-R1 reward distillation (`python -m training.run`); imports `stream_r1`, never `nodes`."""
