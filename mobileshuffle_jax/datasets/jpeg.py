"""Everything a builder stores is a 3-channel RGB JPEG that TensorFlow's decoder accepts.

The training pipeline decodes with `tf.io.decode_and_crop_jpeg`, which only reads JPEG and
mis-renders CMYK; fixing each image once at preparation time (as tfds's own imagenet2012
builder does for its CMYK and PNG files) keeps the per-step path single and fast.
"""

from __future__ import annotations

import io

import PIL.Image
import tensorflow as tf

# High enough that re-encoding is visually lossless, low enough to keep records small.
QUALITY = 95


def encode(image: PIL.Image.Image, quality: int = QUALITY,
           chroma_subsampling: str = "4:4:4") -> bytes:
  """An RGB JPEG of `image`; by default visually lossless, with full-resolution chroma.

  "4:2:0" halves the chroma both ways, as cameras (and ImageNet's files) do: smaller files
  that decode faster.
  """
  buffer = io.BytesIO()
  image.convert("RGB").save(buffer, format="JPEG", quality=quality,
                            subsampling=chroma_subsampling)
  return buffer.getvalue()


def as_rgb_jpeg(data: bytes) -> bytes:
  """`data` itself when it already is an RGB JPEG, else the image re-encoded as one.

  Raises whatever PIL or TensorFlow raise on data they cannot decode (truncated or corrupt
  files, non-images): callers skip such files.
  """
  with PIL.Image.open(io.BytesIO(data)) as image:
    # The format sniffed from the bytes, not the file name: a PNG named .JPEG is re-encoded.
    if image.format != "JPEG" or image.mode != "RGB":
      data = encode(image)  # convert() decodes fully, so corrupt data raises here
  # Reject what the training pipeline's decoder would reject. Decoding at 1/8 scale still
  # parses all entropy-coded data (where truncation and corruption show) for a fraction of
  # the cost of a full decode.
  tf.io.decode_jpeg(data, channels=3, ratio=8)
  return data
