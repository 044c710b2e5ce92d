"""The original ndsharray walkthrough, console 1: the writer.

Run this, then ``python examples/console2_reader.py`` in another terminal.
"""

import numpy as np

import ndsharray

my_array = np.random.random((4, 2))  # array size can be changed during runtime
shared_array = ndsharray.NdShArray("my_unique_tag123", array=my_array, r_w="w")

print("name of the ndsharray: %s" % shared_array.name)
print("access of the ndsharray: %s" % shared_array.access)
print("current ndarray name: %s" % shared_array.ndarray_mmap_name)
print(my_array)

input("\nnow run console2_reader.py, then press Enter here to change shape and dtype... ")
my_int_array = (255 * np.random.random((6, 3))).astype(np.uint8)
shared_array.write(my_int_array)
print("current ndarray name: %s" % shared_array.ndarray_mmap_name)  # a new segment
print(my_int_array)
input("\nread it in console 2 (press Enter there), then press Enter here to quit... ")
shared_array.close()
