// Host-side driver for the per-element math of arrayloss/_cupy/kernels.cuh.
// The test suite compiles it with the host C++ compiler and calls it through ctypes, so the
// exact functions the CUDA kernels use are checked on the CPU.
#include "kernels.cuh"

template <typename A>
static void gaussian(const A* input, const A* target, const A* var, long long count, A eps,
                     A constant, A upstream, A* loss, A* grad_input, A* grad_var,
                     int* invalid) {
    for (long long k = 0; k < count; ++k) {
        invalid[k] = al::gaussian_var_is_invalid(var[k]);
        const A clamped = al::clamp_var(var[k], eps);
        loss[k] = al::gaussian_loss(input[k], target[k], clamped, constant);
        grad_input[k] = al::gaussian_grad_input(input[k], target[k], clamped, upstream);
        grad_var[k] = al::gaussian_grad_var(input[k], target[k], clamped, upstream);
    }
}

template <typename A>
static void nll(const long long* targets, const A* picked, const A* weights, long long count,
                long long n_classes, long long ignore_index, int ignore_matches, int reduction,
                A upstream, A total_weight, long long* classes, A* loss, A* weight, A* coef) {
    for (long long k = 0; k < count; ++k) {
        const long long cls = al::nll_class(targets[k], n_classes, ignore_index, ignore_matches);
        const A class_weight = cls >= 0 ? weights[cls] : A(1);
        classes[k] = cls;
        loss[k] = al::nll_loss(cls, picked[k], class_weight);
        weight[k] = al::nll_weight(cls, class_weight);
        coef[k] = cls >= 0 ? al::nll_grad_coefficient(reduction, class_weight, upstream,
                                                      total_weight)
                           : A(0);
    }
}

extern "C" {
void gaussian_f64(const double* x, const double* t, const double* v, long long n, double eps,
                  double c, double g, double* loss, double* gx, double* gv, int* invalid) {
    gaussian<double>(x, t, v, n, eps, c, g, loss, gx, gv, invalid);
}
void gaussian_f32(const float* x, const float* t, const float* v, long long n, float eps,
                  float c, float g, float* loss, float* gx, float* gv, int* invalid) {
    gaussian<float>(x, t, v, n, eps, c, g, loss, gx, gv, invalid);
}
void nll_f64(const long long* t, const double* p, const double* w, long long n, long long c,
             long long ii, int matches, int reduction, double g, double tw, long long* cls,
             double* loss, double* weight, double* coef) {
    nll<double>(t, p, w, n, c, ii, matches, reduction, g, tw, cls, loss, weight, coef);
}
void nll_f32(const long long* t, const float* p, const float* w, long long n, long long c,
             long long ii, int matches, int reduction, float g, float tw, long long* cls,
             float* loss, float* weight, float* coef) {
    nll<float>(t, p, w, n, c, ii, matches, reduction, g, tw, cls, loss, weight, coef);
}
int compute_is_double_f16_f32(void) {  // (2-byte, float) computes in float
    return al::is_double<al::compute_of<short, float>::type>::value;
}
int compute_is_double_f32_f64(void) {
    return al::is_double<al::compute_of<float, double>::type>::value;
}
int compute_is_double_i64_f32(void) {  // an int64 target does not make it double
    return al::is_double<al::compute_of<float, long long, float>::type>::value;
}
}
