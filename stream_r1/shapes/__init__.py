"""Shapes world: synthetic prompt/video pairs (renderer, prompt grammar) and an analytic checker."""
from .prompts import (BACKGROUNDS, COLORS, MOTIONS, SHAPES, SceneAttrs, ShapeAttrs, parse_prompt, unknown_words,
                      vocabulary)
from .render import Change, Scene, ShapeSpec, Track, generate, render
from .sample import sample_scene
from .check import analyze, check, check_many, check_timeline, describe

__all__ = ["BACKGROUNDS", "COLORS", "MOTIONS", "SHAPES", "SceneAttrs", "ShapeAttrs", "parse_prompt", "unknown_words", "vocabulary",
           "Change", "Scene", "ShapeSpec", "Track", "generate", "render", "sample_scene",
           "analyze", "check", "check_many", "check_timeline", "describe"]
