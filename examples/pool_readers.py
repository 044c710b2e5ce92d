"""A multiprocessing pool whose workers all read one tag, zero-copy.

The parent publishes a large array once; each worker attaches by tag and computes on its
own slice without copying the data or pickling it through the pool.
"""

import multiprocessing as mp

import numpy as np

import ndsharray


def column_sum(col: int) -> float:
    # One handle per worker process, opened on first use and reused for every task.
    global _reader
    if "_reader" not in globals():
        _reader = ndsharray.NdShArray("pool/matrix", r_w="r")
    _, matrix = _reader.read()  # the latest write, a read-only view
    return float(matrix[:, col].sum())


if __name__ == "__main__":
    matrix = np.arange(2000 * 8, dtype=np.float64).reshape(2000, 8)
    with ndsharray.NdShArray("pool/matrix", matrix, "w"):
        with mp.get_context("spawn").Pool(4) as pool:
            sums = pool.map(column_sum, range(matrix.shape[1]))
        print("column sums from the workers:", sums)
        print("same as numpy:", np.allclose(sums, matrix.sum(axis=0)))
