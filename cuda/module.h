/*
 * module.h — inside shoal only (cuda/loader.c, comm/nccl_loader.c): the CUDA
 * backend and the NCCL communicator live in a module, libshoal_cuda.so, that
 * is opened only when a GPU is wanted. Linking cuBLAS, cuDART and NCCL into
 * every shoal process cost 218 MB of resident memory on a machine without a
 * GPU (measured: the loader relocating half a gigabyte of libraries), so the
 * shoal executable does not link them; the module finds shoal's own functions
 * in the executable, which exports them.
 */
#ifndef SHOAL_CUDA_MODULE_H
#define SHOAL_CUDA_MODULE_H

/*
 * The address of the module's function name, opening the module on first
 * use: $SHOAL_CUDA_MODULE, else beside the executable, else where the build
 * put it, else the loader's search path. NULL when it cannot be opened or
 * lacks the name, with *why (if not NULL) set to a message that stays valid.
 */
void *shoal_cuda_module_symbol(const char *name, const char **why);

#endif
