// Bit-identity check for kernel refactors: hashes (FNV-1a over the output floats' bits) of
// cw_matmul for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 × four shapes × 1–9, 14, 19 and 136 tokens (the
// one-token and batched paths; 136 = 17 groups: two chunks of groups, the second of one), fixed
// inputs. Build it from the sources before and after a change and diff the outputs;
// CHUNKWISE_KERNELS=avx2|portable checks the other levels. PREC: 0 exact, 1 fast.
//   K=../../Sources/CKernels
//   clang -O3 -ffp-contract=fast -fno-math-errno -DPREC=1 -I $K/include $K/*.c bits_hash.c -o bits_hash -lpthread -lm
//   ./bits_hash > after.txt    (and the same from the old sources > before.txt; diff them)
#include "ckernels.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#ifndef PREC
#define PREC 1
#endif
static int bb(int t){switch(t){case 2:return 18;case 3:return 20;case 6:return 22;case 7:return 24;case 8:return 34;}return 0;}
int main(){
  cw_pool*pool=cw_pool_create(2);
  int types[]={2,3,6,7,8}; int shapes[][2]={{576,576},{1536,576},{576,1536},{37,96}};
  int toks[]={1,2,3,4,5,6,7,8,9,14,19,136};
  for(int ti=0;ti<5;ti++)for(int si=0;si<4;si++)for(int tk=0;tk<12;tk++){int tok=toks[tk];
    int type=types[ti],rows=shapes[si][0],cols=shapes[si][1];
    int64_t rb=cols/32*bb(type); size_t wb=rows*rb; srand(ti*100+si*10+tok);
    uint8_t*w=malloc(wb); for(size_t i=0;i<wb;i++)w[i]=rand();
    for(size_t b=0;b<wb/bb(type);b++){uint16_t h=cw_fp32_to_fp16((rand()%1000)/50000.f);memcpy(w+b*bb(type),&h,2); if(type==3||type==7){h=cw_fp32_to_fp16(-(rand()%1000)/80000.f);memcpy(w+b*bb(type)+2,&h,2);}}
    float*x=malloc(4*cols*tok),*y=malloc(4*rows*tok); for(int i=0;i<cols*tok;i++)x[i]=(rand()%2001-1000)/300.f;
    cw_matmul(type,w,rows,cols,rb,x,tok,y,PREC,pool);
    uint64_t h=1469598103934665603ULL; for(int i=0;i<rows*tok;i++){uint32_t v;memcpy(&v,y+i,4);h=(h^v)*1099511628211ULL;}
    printf("%d %dx%d t%d %016llx\n",type,rows,cols,tok,(unsigned long long)h); free(w);free(x);free(y);}
}
