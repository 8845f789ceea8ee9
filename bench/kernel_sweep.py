"""Kernel-level sweep: _MklQuantizedMatMulWithBiasAndDequantize (int8 variable weight, 7-bit) vs fp32 MatMul at
GPT-J (n_embd 1024) shapes.  Usage: PYTHONPATH=. .venv/bin/python bench/kernel_sweep.py 128"""
import numpy as np, tensorflow as tf, time, sys, os
from tensorflow.python.eager import wrap_function
from tensorflow.core.framework import graph_pb2
from tfquant.graph import make_node, make_const, DType
rs = np.random.RandomState(0)
def bench(f, X, n=10):
    for _ in range(3): f(X)
    t=time.perf_counter()
    for _ in range(n): f(X)
    return (time.perf_counter()-t)/n*1000
tot = {'int8':0,'fp32':0}
for M,K,N,cnt in [(int(sys.argv[1]),1024,1024,4),(int(sys.argv[1]),1024,4096,1),(int(sys.argv[1]),4096,1024,1),(int(sys.argv[1]),1024,50400,0.25)]:
    a = rs.randn(M,K).astype(np.float32); w = (rs.randn(K,N)*0.02).astype(np.float32)
    wq = np.clip(np.round(w*63/np.abs(w).max()), -63, 63).astype(np.int8)
    wvar = tf.Variable(wq); wf = tf.Variable(w)
    gd = graph_pb2.GraphDef()
    bc = make_const('bq', np.zeros(N, np.int32)); bc.attr['dtype'].type = DType('qint32').enum; bc.attr['value'].tensor.dtype = DType('qint32').enum
    nodes = [make_node('Placeholder','x',attrs={'dtype':DType('float')}), bc,
     make_node('Placeholder','wh',attrs={'dtype':DType('resource')}),
     make_node('ReadVariableOp','wr',['wh'],{'dtype':DType('int8')}),
     make_node('Bitcast','wq',['wr'],{'T':DType('int8'),'type':DType('qint8')}),
     make_const('amin', np.float32(a.min())), make_const('amax', np.float32(a.max())),
     make_const('wmin', np.float32(-1)), make_const('wmax', np.float32(1)),
     make_const('fo0', np.float32(0)), make_const('fo1', np.float32(1)),
     make_node('_MklQuantizeV2','q',['x','amin','amax'],{'T':DType('quint8'),'mode':'MIN_FIRST','_kernel':'QuantizedMklOp'}),
     make_node('_MklQuantizedMatMulWithBiasAndDequantize','mm',['q','wq','bq','q:1','q:2','wmin','wmax','fo0','fo1'],
        {'T1':DType('quint8'),'T2':DType('qint8'),'Tbias':DType('qint32'),'Toutput':DType('float'),'input_quant_mode':'MIN_FIRST','_kernel':'QuantizedMklOp','is_weight_const':True,'is_bias_const':True})]
    gd.node.extend(nodes)
    f8 = wrap_function.function_from_graph_def(gd, ['x:0'], ['mm:0'], captures={'wh': wvar.handle})
    g = tf.function(lambda x: tf.matmul(x, wf))
    X = tf.constant(a)
    t8, t32 = bench(f8, X), bench(g, X)
    tot['int8'] += t8*cnt*4; tot['fp32'] += t32*cnt*4
    print(f'{M}x{K}x{N}: int8 {t8:.1f} ms  fp32 {t32:.1f} ms  ratio {t8/t32:.2f}')
print(tot, tot['int8']/tot['fp32'])
