"""Data: video codec helpers, TFDS builders (moving_shapes, video_text_folder), tokenizer."""
