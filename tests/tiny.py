"""The smallest pipeline that trains in milliseconds: shared by the tests that train."""

TINY_UNET = {
    "type": "unet",
    "channels": [8, 16],
    "blocks_per_level": 1,
    "groups": 4,
    "heads": 1,
    "mid_attention": False,
    "prediction": "v",
}
