/*
 * cuda — the CUDA compute backend. For now only the probe that says whether
 * a usable device is present; the kernels, cuBLAS and device memory come with
 * the CUDA issue. Without CUDA in the build, the probe reports no device.
 */
#ifndef SHOAL_CUDA_H
#define SHOAL_CUDA_H

/*
 * Number of CUDA devices this process can use; 0 when the build has no CUDA,
 * when no driver is installed, or when the driver is too old ("no device",
 * not an error). *why, if not NULL, is set to a static explanation.
 */
int shoal_cuda_device_count(const char **why);

#endif
