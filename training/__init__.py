"""Stream-R1 reward distillation (`python -m training.run`); imports `stream_r1`, never `nodes`.

    python -m training.run --recipe tiny_stream_r1                       # CPU, seconds
    python -m torch.distributed.run --nproc_per_node 8 -m training.run --recipe stream_r1_1.3b \\
        --set data.prompt_file=prompts/vidprom_filtered_extended.txt --config my_overrides.toml

Layout: run.py (entry, side effects), config.py (TrainConfig tree, --set/--config parsing), recipes.py,
trainer.py (the loop), rollout.py (self-forcing rollout, teacher ODE), losses.py, models.py (building, EMA),
parallel.py (FSDP2, activation checkpointing, collectives), checkpoint.py (DCP + safetensors export),
data.py (prompts, embeddings), observe.py (log lines, TensorBoard, samples).
"""
