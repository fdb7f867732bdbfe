"""Shapes-world training: the clip bank and degradations (`world`), the tokenizer and tiny umT5 (`text`), the
pretraining methods vae / teacher / reward (`pretrain`, `reward`) and the bundle assembly + evaluation (`bundle`)."""
