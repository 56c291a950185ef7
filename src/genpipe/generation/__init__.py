"""Batch generation: trained models -> images + Parquet manifest in an object store."""

from genpipe.generation.batch import MANIFEST_SCHEMA, GenerationJob, GenerationResult, generate_images, parse_labels

__all__ = ["MANIFEST_SCHEMA", "GenerationJob", "GenerationResult", "generate_images", "parse_labels"]
