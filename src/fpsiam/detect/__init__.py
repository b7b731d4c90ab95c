"""Transfer to polyp detection: Faster R-CNN and RetinaNet with the paper's recipes."""
