"""Fine-tuning a pretrained CNN on a user's data set: plain functions, no framework."""
