import numpy as np

import convolab as cl


def test_conv2d_runs():
    y = cl.conv2d(np.ones((1, 3, 8, 8)), np.ones((4, 3, 3, 3)), padding="same")
    assert y.shape == (1, 4, 8, 8)
    assert y[0, 0, 4, 4] == 27.0
