"""Evaluation: image metrics (PSNR, SSIM, LPIPS from local weights) and the held-out benchmark/report."""
