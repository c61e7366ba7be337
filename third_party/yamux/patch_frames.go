package yamux

// Patched for tunnelworks (see PATCHED.md, patch 15): data frames of up
// to 64 KiB (maxDataFrame), but never more than half the credit a writer
// holds, down to 32 KiB. A receiver sends a window update once half its
// window is read: with one frame the size of the whole window in flight,
// the update waits for the whole frame, and the path idles for a round
// trip per window (what that cost a slow link: PATCHED.md, patch 15). Two
// frames keep one in flight while the other is read.

// minFrameCap is the smallest bound frameCap puts on a frame: the frame
// size of patch 8, so a small window is sent as it was then.
const minFrameCap = 32 * 1024

// frameCap is the largest data frame a writer holding window bytes of
// credit sends: half of it, at least minFrameCap.
func frameCap(window uint32) uint32 {
	if half := window / 2; half > minFrameCap {
		return half
	}
	return minFrameCap
}
