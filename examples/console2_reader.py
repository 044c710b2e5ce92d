"""The original ndsharray walkthrough, console 2: the reader."""

import ndsharray

_shared_array = ndsharray.NdShArray("my_unique_tag123", r_w="r")

status, my_array = _shared_array.read()
print("status: %s" % status)  # check if the read is valid with the status!
print("elapsed write-read time: %s ms" % _shared_array.read_time_ms)
print(my_array)

input("\nchange the array in console 1 (press Enter there), then press Enter here... ")
status, my_array_2 = _shared_array.read()
print("status: %s" % status)
print("elapsed write-read time: %s ms" % _shared_array.read_time_ms)
print("current ndarray name: %s" % _shared_array.ndarray_mmap_name)
print(my_array_2)
