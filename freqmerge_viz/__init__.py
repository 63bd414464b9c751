"""freqmerge-viz: model merging in the frequency domain."""
