"""Reading and writing the toolkit's file formats: YTVIS JSON (annotations, results) and RLE masks."""
