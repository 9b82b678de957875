import threading

import torch
from PIL import Image

from vlstack.infer.cache import FeatureCache, image_key


def test_lru_eviction_keeps_the_byte_bound():
    cache = FeatureCache(max_bytes=3 * 400)  # room for three [100] float32 tensors
    for i in range(5):
        cache.put(str(i), torch.full((100,), float(i)))
        assert cache.stats().bytes <= cache.max_bytes
    assert cache.get("0") is None and cache.get("1") is None
    assert cache.get("2") is not None  # now most recent
    cache.put("5", torch.zeros(100))
    assert cache.get("3") is None and cache.get("2") is not None
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (2, 3, 3)


def test_an_item_over_the_bound_is_not_cached():
    cache = FeatureCache(max_bytes=100)
    cache.put("big", torch.zeros(1000))
    assert cache.get("big") is None and cache.stats().bytes == 0


def test_image_key_depends_on_pixels_not_on_the_object():
    a = Image.new("RGB", (8, 8), (1, 2, 3))
    assert image_key(a) == image_key(a.copy())
    assert image_key(a) != image_key(Image.new("RGB", (8, 8), (1, 2, 4)))
    assert image_key(a) != image_key(a.convert("RGBA"))


def test_concurrent_use_keeps_counts_and_bound():
    cache = FeatureCache(max_bytes=10 * 40)

    def work(offset: int) -> None:
        for i in range(200):
            key = str((i + offset) % 20)
            if cache.get(key) is None:
                cache.put(key, torch.zeros(10))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = cache.stats()
    assert stats.hits + stats.misses == 800 and stats.bytes <= stats.max_bytes
